"""Fine-tuning: MOS readers and splits, the config table and typed configs, one training
skeleton (:mod:`vqpipe.train.loop`) with a small object per method (Gamma, Q-Align SFT,
Compare2Score), and the Ray Train entry point (:func:`vqpipe.train.trainer.fit`)."""
