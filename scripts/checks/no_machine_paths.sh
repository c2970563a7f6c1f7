#!/usr/bin/env bash
# Fails when a committed file names an absolute path of one developer's machine (a checkout,
# a home directory, a venv): such paths work nowhere else. Use paths relative to the
# repository, `$PWD`, or an environment variable instead.
set -euo pipefail
cd "$(dirname "$0")/../.."
pattern='(/work/|/home/[A-Za-z]|/Users/[A-Za-z]|/root/|[A-Za-z]:\\\\Users\\\\)'
if hits=$(git grep -nIE "$pattern" -- . ':!scripts/checks/no_machine_paths.sh' ':!*.lock'); then
  echo "error: absolute paths of a developer's machine are committed (use repository-relative paths):" >&2
  echo "$hits" >&2
  exit 1
fi
echo "no machine paths: ok"
