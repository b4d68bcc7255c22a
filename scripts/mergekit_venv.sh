# Sourced by scripts/bench_merge.sh and scripts/parity_mergekit.sh: mergekit_venv VENV creates VENV (torch 2.13.0
# + mergekit 0.1.5, benchmark-only, apart from the project's environment) unless it already has mergekit-yaml.
mergekit_venv() {
  local venv=$1
  if [[ ! -x "$venv/bin/mergekit-yaml" ]]; then
    echo "== creating $venv (torch 2.13.0 + mergekit 0.1.5)"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet torch==2.13.0 mergekit==0.1.5
  fi
}
