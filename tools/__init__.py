"""The project's tooling, in packages by concern; imports flow from the tools built on the stack down to it.

    stack/   the local Dapr stack without Docker (ground floor: every other package builds on it)
    doctor/  checks that this machine can run the example (standard library only)
    runs/    looking inside runs and acting on them: history, the dashboard, approvals, demos, screenshots
    bench/   `make bench`: what durability costs
    ha/      `make serve-ha`: three placement, three scheduler nodes and three replicas
    proof/   the proof of the claims (docs/claims.md): switch-offs, figures, the Kubernetes check
"""
