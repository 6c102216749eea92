"""``python -m onnxcam``: the same command as ``onnxcam``, for environments without the script on PATH."""

import sys

from onnxcam.cli import main

sys.exit(main())
