"""Fine-tuning as a Ray job: ``vqpipe train`` with the cluster in RAY_ADDRESS.

    ray job submit --working-dir . -- python pipelines/finetune.py --method gamma \\
        --config configs/gamma.yaml --num-workers 4 --use-gpu --storage-path s3://runs/
"""

import sys

from vqpipe.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
