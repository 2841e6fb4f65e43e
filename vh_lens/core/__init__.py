"""The core every experiment stands on.

- loading a checkpoint (``loading``, ``conformance``, ``tensor_source``, ``processing``,
  ``fingerprint``, ``onevision``),
- the model and its batches (``model``: :class:`LlavaLens`, :class:`LlavaBatch`),
- which position is what (``layout``, ``image_tokens``, ``geometry``),
- fast paths (``fast_attention``), prompts (``prompts``, ``tokenizer``), TransformerLens-native
  images (``tl_native``), hook helpers (``hooks``) and result files (``io``).
"""
