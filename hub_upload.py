#!/usr/bin/env python
"""Publish a ReT-2 model to the Hugging Face Hub: `python hub_upload.py --help` (installed: `ret2-publish`).

The command lives in `ret2.commands.publish` and the library in `ret2.publish`; this file is the command a checkout
runs.
"""

from ret2.commands.publish import main

if __name__ == "__main__":
    main()
