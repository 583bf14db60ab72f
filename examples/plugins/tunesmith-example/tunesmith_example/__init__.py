"""tunesmith-example: the ``token_f1`` metric and the ``last_layers`` method for tunesmith."""
