"""The extra fields of the preference objectives' encoded examples (no torch: the plugins'
descriptors import these without loading the training libraries)."""

#: Fields of an encoded pair besides ``input_ids``/``labels`` (the chosen conversation).
PAIR_FIELDS = ("rejected_input_ids", "rejected_labels")
#: Fields of an encoded unpaired example: its label (1 desirable, 0 undesirable) and where its
#: completion starts (the prompt's length in tokens).
UNPAIRED_FIELDS = ("kto_label", "prompt_length")
#: Reference log-probabilities precomputed before training (``objective.precompute_ref``).
PAIR_PRECOMPUTED = ("ref_chosen_logps", "ref_rejected_logps")
UNPAIRED_PRECOMPUTED = ("ref_logps", "ref_kl_logps")
#: What precomputing adds to an unpaired example: its fixed mismatched twin and the reference's
#: log-probabilities.
UNPAIRED_PRECOMPUTED_FIELDS = ("kl_input_ids", "kl_labels", *UNPAIRED_PRECOMPUTED)
