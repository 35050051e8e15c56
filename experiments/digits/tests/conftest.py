"""The experiments' tests run on the shipped digits world, offline, from the repository root's modules."""

import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
