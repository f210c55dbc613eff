"""Sources (listing, manifests, shards), checkpoint resolution and fingerprints, Parquet output.

Filled by the pipeline issue.
"""
