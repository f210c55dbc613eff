"""Network code per method (mPLUG-Owl2 for Q-Align / Compare2Score, Gamma on open_clip).

Only architecture and checkpoint loading live here; prompts, batching and caches belong to the
scorers. Filled by the Q-Align and Gamma issues.
"""
