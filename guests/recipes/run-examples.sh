#!/usr/bin/env bash
# Runs the example recipes end to end with the wrun CLI on a fresh embedded
# store, against two loopback HTTPS mock APIs (GitHub-like and Slack-like)
# that the repository ships: no network needed.
#
#   ./guests/recipes/run-examples.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

cargo build -q -p wrun -p wrun-tests --bin wrun --bin wrun-mock
TARGET="${CARGO_TARGET_DIR:-$PWD/target}"
WRUN="$TARGET/debug/wrun"
MOCK="$TARGET/debug/wrun-mock"

WORK="$(mktemp -d)"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

GITHUB_TOKEN="ghp_example_$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
SLACK_TOKEN="xoxb-example-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
"$MOCK" --name api.github.test --ca-out "$WORK/github-ca.pem" --port-file "$WORK/github.port" --bearer "$GITHUB_TOKEN" >/dev/null &
PIDS+=($!)
"$MOCK" --name slack.test --ca-out "$WORK/slack-ca.pem" --port-file "$WORK/slack.port" --bearer "$SLACK_TOKEN" >/dev/null &
PIDS+=($!)
for _ in $(seq 100); do
    [ -s "$WORK/github.port" ] && [ -s "$WORK/slack.port" ] && break
    sleep 0.1
done

# The operator settings a local mock needs: trust its CAs, allow loopback,
# resolve its names to 127.0.0.1.
export WRUN_DB="$WORK/wrun.db" WRUN_KEY_FILE="$WORK/master.key"
export WRUN_CA_FILE="$WORK/github-ca.pem,$WORK/slack-ca.pem"
export WRUN_ALLOW_RANGES=127.0.0.0/8
export WRUN_RESOLVE=api.github.test=127.0.0.1,slack.test=127.0.0.1
export WRUN_CACHE_DIR="$TARGET/wrun-cache"

if [ -t 1 ] && [ -z "${NO_COLOR:-}" ]; then
    step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
else
    step() { printf '\n$ %s\n' "$*"; }
fi

step wrun key init
"$WRUN" key init
step "wrun connection add github --host 'api.github.test:*'   (value on stdin)"
printf '%s' "$GITHUB_TOKEN" | "$WRUN" connection add github --host 'api.github.test:*' --apply 'header:Authorization=Bearer {}'
step "wrun connection add slack --host 'slack.test:*'   (value on stdin)"
printf '%s' "$SLACK_TOKEN" | "$WRUN" connection add slack --host 'slack.test:*'
step wrun connection list
"$WRUN" connection list
step wrun env set github_api=... slack_api=...
"$WRUN" env set "github_api=https://api.github.test:$(cat "$WORK/github.port")"
"$WRUN" env set "slack_api=https://slack.test:$(cat "$WORK/slack.port")"
step wrun build guests/recipes/issue-to-slack/recipe.toml
CARGO_TARGET_DIR="$TARGET/guests" "$WRUN" build guests/recipes/issue-to-slack/recipe.toml 2>/dev/null
step wrun check guests/recipes/issue-to-slack/recipe.toml
"$WRUN" check guests/recipes/issue-to-slack/recipe.toml
step wrun run guests/recipes/issue-to-slack/recipe.toml --input guests/recipes/issue-to-slack/input.json
"$WRUN" run guests/recipes/issue-to-slack/recipe.toml --input guests/recipes/issue-to-slack/input.json
step wrun run guests/recipes/issue-triage/recipe.toml --input guests/recipes/issue-triage/input.json
"$WRUN" run guests/recipes/issue-triage/recipe.toml --input guests/recipes/issue-triage/input.json
step wrun export guests/recipes/issue-to-slack/recipe.toml -o issue-to-slack.wrun
"$WRUN" export guests/recipes/issue-to-slack/recipe.toml -o "$WORK/issue-to-slack.wrun"
if grep -qa -e "$GITHUB_TOKEN" -e "$SLACK_TOKEN" "$WORK/issue-to-slack.wrun" "$WRUN_DB"; then
    echo "a token was found in the bundle or the database" >&2
    exit 1
fi
printf '\nthe tokens appear in neither the bundle nor the database file\n'
