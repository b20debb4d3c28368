#!/usr/bin/env python
"""Publish a ReT-2 model to the Hugging Face Hub: `python hub_upload.py --help` (installed: `ret2-publish`).

The code lives in `ret2.publish`; this file is the command a checkout runs.
"""

import sys

from ret2.publish import main

if __name__ == "__main__":
    sys.exit(main())
