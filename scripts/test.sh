#!/usr/bin/env bash
# Runs every check and test of the repository; CI runs exactly this (.ci/run).
# Installs what the tests need when it is missing (Debian packages), so it works on a fresh
# machine with only the Rust toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
# kubectl renders the kustomize bases in the packaging check (Debian ships it as kubernetes-client).
command -v kubectl >/dev/null || need_apt+=(kubernetes-client)
python3 -c 'import yaml' 2>/dev/null || need_apt+=(python3-yaml)
command -v curl >/dev/null || need_apt+=(curl)
# The partition test cuts a node off with a network namespace and veth links.
command -v ip >/dev/null || need_apt+=(iproute2)
# `tern-agent dev` and the process tests signal agents with the kill program (not the shell's).
{ [ -x /usr/bin/kill ] || [ -x /bin/kill ]; } || need_apt+=(procps)
# The SMTP tests (agent/tests/smtp_delivery.rs) drive the agents with real clients: swaks
# (its STARTTLS needs the two Perl modules), curl, and Python's smtplib.
command -v swaks >/dev/null || need_apt+=(swaks)
perl -MNet::SSLeay -e 1 2>/dev/null || need_apt+=(libnet-ssleay-perl)
perl -MIO::Socket::SSL -e 1 2>/dev/null || need_apt+=(libio-socket-ssl-perl)
command -v python3 >/dev/null || need_apt+=(python3)
# The IMAP client tests (agent/tests/imap_clients.rs): mbsync (isync), fetchmail, and mutt,
# which runs under `script` (util-linux's bsdutils) for the terminal it needs.
command -v mbsync >/dev/null || need_apt+=(isync)
command -v fetchmail >/dev/null || need_apt+=(fetchmail)
command -v mutt >/dev/null || need_apt+=(mutt)
command -v script >/dev/null || need_apt+=(bsdutils)
# The SMTP load test (agent/tests/smtp_load.rs) sends with Postfix's smtp-source.
command -v smtp-source >/dev/null || need_apt+=(postfix)
if [ ${#need_apt[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
  # Only smtp-source is wanted from postfix: stop the system MTA if its install started one.
  if [[ " ${need_apt[*]} " == *" postfix "* ]] && postfix status >/dev/null 2>&1; then
    postfix stop >/dev/null 2>&1 || true
  fi
fi

step() { printf '\n== %s\n' "$*"; }

step "format"
cargo fmt --all -- --check

step "lint"
cargo clippy --locked --workspace --all-targets -- -D warnings

step "build"
# The e2e and agent tests start tern-agent processes (`tern-agent dev`, `tern-agent run`), so
# the binaries are built before the tests.
cargo build --locked --workspace --bins

step "packaging: CRD copies, kustomize, chart, samples against the schema"
bash scripts/check-packaging.sh

step "tests"
# Includes the CRD drift test (crds/tests/manifests.rs), the CEL rule tests, placement
# properties, render golden files, the controller against a fake API server, the local
# cluster e2e, and the real-cluster e2e when KUBECONFIG is set.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --locked --workspace 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line with the totals over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "\ntests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
