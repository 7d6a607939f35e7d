"""Train vqcausal.

accelerate launch --config_file configs/accelerate/cpu.yaml train.py [--config FILE] [--set K=V]
python train.py [--config FILE] [--set K=V]
"""

import sys

from vqcausal.train.run import main

if __name__ == "__main__":
    sys.exit(main())
