"""Model-wide analyses used by both papers: the logit lens (``logit_lens``) and head
interventions as TransformerLens hooks (``interventions``: ablate, scale, shift, head means)."""
