import os
import sys

# Let the pytest-benchmark suite import harness.py beside it.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
