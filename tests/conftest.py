"""What every test process starts with.

NO_GCE_CHECK=true: google-auth's Application Default Credentials (shared/adapters/google_auth.py) end their search by
probing the Compute Engine metadata server (169.254.169.254), an address a test must never reach. With it, a test
that queries a google_healthcare source without credentials of its own fails at once ("default credentials were not
found"), as on any machine outside Google Cloud.
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_GCE_CHECK", "true")
