#!/usr/bin/env bash
# Fuzzes every target of fuzz/ for N seconds each (default 60) with cargo-fuzz on nightly,
# growing fuzz/corpus/<target>/ in place, then minimises each corpus (set cover of edges) so the
# checked-in corpus stays small. A crash stops the run and leaves its input in fuzz/artifacts/<target>/;
# fix it, add it as a regression test, and copy the input into the corpus.
# Not part of CI (tests/fuzz_corpus.rs replays the corpus on stable there).
#   tests/fuzz.sh [seconds-per-target] [target…]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds="${1:-60}"
shift || true
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "tests/fuzz.sh: needs the nightly toolchain and cargo-fuzz:" >&2
  echo "  rustup toolchain install nightly && cargo install cargo-fuzz" >&2
  exit 2
fi
targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi

# Keeps the smallest set of inputs that still covers every edge the corpus reaches (set cover
# over edges, without hit counts), so the checked-in corpus stays a few hundred small files.
minimise() {
  local target="$1" fresh
  fresh="$(mktemp -d)"
  cargo +nightly fuzz run "$target" "$fresh" "corpus/$target" -- \
    -set_cover_merge=1 -use_counters=0 -use_value_profile=0 -max_len=4096 >/dev/null 2>&1
  rm -rf "corpus/$target"
  mv "$fresh" "corpus/$target"
}

# One libFuzzer job per target: the machine has two cores and others build on it.
for target in "${targets[@]}"; do
  echo "== $target: ${seconds}s" >&2
  mkdir -p "corpus/$target"
  cargo +nightly fuzz run "$target" "corpus/$target" -- \
    -max_total_time="$seconds" -max_len=4096 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
  minimise "$target"
  echo "== $target: corpus now $(find "corpus/$target" -type f | wc -l) inputs" >&2
done
