# Config validation and helpers shared by all rule files. Logic lives in linepo/.
import sys

from linepo.config import validate_config
from linepo.errors import InputError

try:
    config = validate_config(config)
except InputError as err:
    # One clear line and a non-zero exit before any job is planned.
    print(f"linepo: {err}", file=sys.stderr)
    sys.exit(1)

WILDCARD_NAME = "[A-Za-z0-9_]+"
