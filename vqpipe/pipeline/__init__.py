"""The Ray Data scoring graph: list → read/decode → score (one actor pool per scorer) → write.

:mod:`vqpipe.pipeline.job` plans a score job, :mod:`vqpipe.pipeline.runner` runs any job kind,
:mod:`vqpipe.pipeline.stages` holds the stages; :mod:`vqpipe.demo` runs the whole graph on a
synthetic corpus.
"""
