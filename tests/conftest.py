"""Fixtures shared by every test layer."""

import sys
from pathlib import Path

# tests/ on the path, whatever the import mode, so tests can import bed.*
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bed.fixtures import bed_cluster, cluster2, cluster3, fresh_cluster  # noqa: E402,F401
