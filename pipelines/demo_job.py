"""Ray job entry point for the embedded demo (same code as ``vqpipe demo``).

ray job submit --working-dir . -- python pipelines/demo_job.py --out /tmp/vqpipe-demo
"""

import sys

from vqpipe.cli import main

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))
