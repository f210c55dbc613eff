"""Network code per method (mPLUG-Owl2 for Q-Align / Compare2Score, Gamma on open_clip).

Only architecture and checkpoint loading live here; prompts, batching and caches belong to the
scorers, which call the models' public pieces (``encode_images``, ``decode``,
``token_logits``, ...).
"""
