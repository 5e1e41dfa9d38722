"""Shared test configuration: the tiers are folders (unit, sim, conformance, lab)."""

import os

# Fail loudly rather than skip when CI promises the conformance headers are installed.
REQUIRE_CONFORMANCE = os.environ.get("XENPURE_REQUIRE_CONFORMANCE") == "1"
