"""Print what the container was started with, as one JSON line."""

import json
import os
import sys

print(
    json.dumps(
        {
            "argv": sys.argv[1:],
            "cwd": os.getcwd(),
            "greeting": os.environ.get("GREETING"),
            "only_in_image": os.environ.get("ONLY_IN_IMAGE"),
            "uid": os.getuid(),
        }
    )
)
