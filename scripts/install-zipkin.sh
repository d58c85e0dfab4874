#!/usr/bin/env bash
# Fetches the Zipkin server (one executable jar) from Maven Central into the
# per-machine cache, where `dapr init` would have run it as a container.
# Without Java the stack runs without tracing; tools/stack/commands.py says so.
# The version comes from tools/stack/stack.env; Maven's output goes to
# $TDA_HOME/logs/fetch-zipkin-<version>.log, and the step prints one line.
set -euo pipefail
TAG=setup
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"   # the facts (tools/stack/stack.env), TDA_HOME, say/die/step
JAR="$TDA_HOME/zipkin/zipkin-server-$ZIPKIN_VERSION-exec.jar"              # settings.ZIPKIN_JAR
LOG="$TDA_HOME/logs/fetch-zipkin-$ZIPKIN_VERSION.log"

[ -f "$JAR" ] && exit 0
if ! command -v java >/dev/null 2>&1; then
  say "zipkin: skipped, no Java, so tracing stays off (Zipkin needs Java 17+: apt-get install openjdk-17-jre-headless maven)"
  exit 0
fi
if ! command -v mvn >/dev/null 2>&1; then
  say "zipkin: skipped, no Maven to fetch it, so tracing stays off (apt-get install maven)"
  exit 0
fi

# Into a folder of its own, then one rename: two clones fetching at once never see half a jar.
fetch_jar() {
  # (not local: the EXIT trap runs after the function returned)
  partial="$(mktemp -d "$TDA_HOME/zipkin.partial.XXXXXX")"
  trap 'rm -rf "$partial"' EXIT
  mvn -B -Dstyle.color=never org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy \
    -Dartifact="io.zipkin:zipkin-server:$ZIPKIN_VERSION:jar:exec" \
    -DoutputDirectory="$partial" -Dmdep.useBaseVersion=true
  mkdir -p "$(dirname "$JAR")"
  mv "$partial/zipkin-server-$ZIPKIN_VERSION-exec.jar" "$JAR"
}

mkdir -p "$TDA_HOME/logs" && : > "$LOG"
step "$LOG" "zipkin: fetching the jar from Maven Central (about 135 MB)" fetch_jar
