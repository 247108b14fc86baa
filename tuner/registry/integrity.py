"""A registered policy's integrity: checksums recorded at registration, checked before anything uses the files.

    policy_digest_for   before logging: the policy directory's checksums.json digest (written now for a directory
                        saved before checksums existed) becomes the version's `policy_sha256` tag
    verify_download     after a download (pull, score): the files match checksums.json, and checksums.json the tag
    discard_version     a refused version is deleted (with its logged model, and its registered model when this
                        promotion created it), so no orphan version is left behind
"""

from __future__ import annotations

from pathlib import Path

from deepfm_tuner.model.checksums import policy_digest, verify_checksums, write_checksums

TAG_DIGEST = "policy_sha256"


def pull_fix(name: str, version: str | int) -> str:
    return (f"the artifact store's copy of '{name}' version {version} is damaged; re-promote it (deepfm promote) and "
            f"pull or score the new version, or restore the store's files")


def policy_digest_for(policy_dir: str | Path) -> str:
    """The digest to record for a policy directory about to be registered (ScoringPolicy.load checked its files);
    a directory saved before checksums existed gets its checksums.json now."""
    return policy_digest(policy_dir) or write_checksums(policy_dir)


def verify_download(policy_dir: str | Path, mv, fix: str | None = None) -> None:
    """A downloaded version's policy directory is what was registered; a CorruptPolicyError names the file and
    `fix` (by default: re-promote)."""
    verify_checksums(policy_dir, fix or pull_fix(mv.name, mv.version),
                     expected_digest=(mv.tags or {}).get(TAG_DIGEST))


def discard_version(client, name: str, version: str | int, created_model: bool, model_id: str | None = None) -> None:
    """Delete a version that must not exist, and the logged model it was registered from (best effort: the
    caller's error matters more)."""
    try:
        client.delete_model_version(name, str(version))
        if created_model and not client.search_model_versions(f"name = '{name}'"):
            client.delete_registered_model(name)
        if model_id:
            client.delete_logged_model(model_id)
    except Exception:  # noqa: BLE001
        pass
