"""Config files added to tunesmith's groups: method/last_layers.yaml, evaluator/token_f1.yaml."""
