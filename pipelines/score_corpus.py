"""Ray job entry point for scoring a corpus (same code as ``vqpipe score``).

    ray job submit --working-dir . -- python pipelines/score_corpus.py s3://bucket/images/ \
        --out s3://bucket/quality/ --scorer gamma:checkpoint=s3://models/gamma_weight.pth
"""

import sys

from vqpipe.cli import main

if __name__ == "__main__":
    sys.exit(main(["score", *sys.argv[1:]]))
