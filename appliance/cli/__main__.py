"""`python -m appliance.cli`: the SSH forced command and the tests run the CLI this way."""

import sys

from appliance.cli import main

sys.exit(main())
