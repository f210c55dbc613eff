"""The Ray Data scoring graph: list → read/decode → score (one actor pool per scorer) → write.

Filled by the pipeline issue; `vqpipe.demo` shows the shape on the scoring math today.
"""
