"""Inputs and storage access: the reader layer (:mod:`vqpipe.io.readers`: one reader per input
kind — listings of files, manifests, WebDataset tars, Parquet / Arrow with media), format
detection and shard planning (:mod:`vqpipe.io.input_format`), bounded reads
(:mod:`vqpipe.io.reading`), fsspec access (:mod:`vqpipe.io.fs`) and checkpoint resolution."""
