"""The bench's access-log parser reads the golden fixture as the test harness's parser does.

Run from the repository root: `python3 -m unittest discover -s bench -p 'test_*.py'` (scripts/test
does). The Rust side is `harness::both_access_log_parsers_read_the_golden_fixture` in tests/it.
"""

import json
import os
import unittest

from mirrorbench.registry import parse_line

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures")


class GoldenAccessLog(unittest.TestCase):
    def test_each_line_parses_as_the_expected_file_says(self):
        with open(os.path.join(FIXTURES, "registry-2.8-access.log"), encoding="utf-8") as f:
            lines = f.read().splitlines()
        with open(os.path.join(FIXTURES, "registry-2.8-access.json"), encoding="utf-8") as f:
            expected = json.load(f)
        self.assertEqual(len(lines), len(expected))
        for line, want in zip(lines, expected):
            a = parse_line(line)
            got = None
            if a is not None:
                got = {
                    "method": a.method,
                    "path": a.path,
                    "query": a.query,
                    "status": a.status,
                    "user_agent": a.user_agent,
                    "repo": a.repo,
                    "kind": a.kind,
                    "ref": a.ref,
                }
            self.assertEqual(got, want, line)


if __name__ == "__main__":
    unittest.main()
