"""``cifer keygen``, ``cifer keys inspect`` and ``cifer keys roster``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cifer_flwr import crypto, masking
from cifer_flwr.cli._common import console, fail, progress
from cifer_flwr.crypto import paillier
from cifer_flwr.crypto.keys import check_key_directory
from cifer_flwr.exceptions import CiferError, ConfigError, OutputPathError

keys_app = typer.Typer(
    pretty_exceptions_show_locals=False, help="Inspect key files.", no_args_is_help=True
)


def keygen(
    name: Annotated[
        str, typer.Option(help="Key pair name (letters, digits, ._-); files go to DIR/NAME/.")
    ],
    preset: Annotated[str, typer.Option(help="CKKS parameter preset.")] = "default",
    directory: Annotated[Path, typer.Option("--dir", help="Parent directory of key pairs.")] = Path(
        "keys"
    ),
    relin: Annotated[
        bool, typer.Option(help="Include relinearization keys (encrypted training).")
    ] = False,
    galois: Annotated[
        bool, typer.Option(help="Include Galois/rotation keys (encrypted training).")
    ] = False,
    force: Annotated[bool, typer.Option(help="Overwrite an existing key pair.")] = False,
    scheme: Annotated[
        str, typer.Option(help="ckks, or paillier (preset paillier / paillier-3072).")
    ] = "ckks",
    identity: Annotated[
        bool,
        typer.Option(
            "--identity",
            help="Write a masking identity instead (DIR/NAME/identity.key + identity.pub).",
        ),
    ] = False,
) -> None:
    """Generate a CKKS key pair: DIR/NAME/private.key (0600, keep it) and public.key (share it).

    With --identity: an Ed25519 identity that signs a key holder's masking advertisements
    (docs/design.md §4.9); collect the identity.pub files into a roster with
    `cifer keys roster`. Examples: cifer keygen --name hospital-fl --preset packed;
    cifer keygen --identity --name site-1
    """
    try:
        target = check_key_directory(crypto.key_directory(directory, name))
        if identity:
            ident_priv, ident_pub = masking.write_identity(target, name, force=force)
            console.print(f"identity     {name}")
            console.print(f"private      {ident_priv}  (mode 0600: --node-config identity-key=...)")
            console.print(f"public       {ident_pub}  (goes into the roster: cifer keys roster)")
            return
        existing = [
            f.name
            for f in (target / crypto.PRIVATE_KEY_FILE, target / crypto.PUBLIC_KEY_FILE)
            if f.exists()
        ]
        if existing and not force:  # checked before the (slow) key generation
            raise OutputPathError(
                f"{target} already holds {' and '.join(existing)}; choose another --name, or "
                "pass --force to overwrite them (the old private key is lost, and with it "
                "everything encrypted under it)."
            )
        if scheme == "paillier":  # crypto/paillier.py, docs/design.md §4.8
            with progress(f"generating a Paillier key pair (preset {preset})", None) as _:
                pkey = paillier.generate_key("paillier" if preset == "default" else preset)
                priv, pub = paillier.write_key_pair(pkey, target, force=force)
            key: crypto.Key | paillier.PaillierKey = pkey
        elif scheme != "ckks":
            raise ConfigError(f"--scheme {scheme!r:.40}: choose ckks or paillier.")
        else:
            with progress(f"generating a CKKS key pair (preset {preset})", None) as _:
                key = ckks_key = crypto.generate_key(preset, relin_keys=relin, galois_keys=galois)
                priv, pub = crypto.write_key_pair(ckks_key, target, force=force)
    except CiferError as exc:
        raise fail(exc) from exc
    console.print(f"fingerprint  {key.fingerprint}")
    console.print(f"preset       {key.params.name} ({key.params.security_bits}-bit security)")
    console.print(f"private key  {priv}  (mode 0600: keep it on the key holders' machines)")
    console.print(f"public key   {pub}  (give it to the server / project owner)")


@keys_app.command("inspect")
def inspect(
    file: Annotated[Path, typer.Argument(help="A public.key or private.key file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Say whether FILE is public or private, its preset and its fingerprint (never key bytes).

    Example: cifer keys inspect keys/hospital-fl/public.key
    """
    try:
        key = crypto.load_key(file)  # the one loader: CKKS, packed (BFV) or Paillier
        if isinstance(key, paillier.PaillierKey):
            info = _paillier_info(file, key)
        else:
            info = _ckks_info(file, key)
    except CiferError as exc:
        raise fail(exc) from exc
    if as_json:
        print(json.dumps(info))
        return
    for k, v in info.items():
        console.print(f"{k:<20} {v}", highlight=False)


def _paillier_info(file: Path, key: paillier.PaillierKey) -> dict[str, object]:
    return {
        "file": str(file),
        "type": "private" if key.is_private else "public",
        "scheme": "paillier",
        "preset": key.params.name,
        "key_bits": key.params.key_bits,
        "values_per_ct": key.params.slots,
        "security_bits": key.params.security_bits,
        "fingerprint": key.fingerprint,
    }


def _ckks_info(file: Path, key: crypto.Key) -> dict[str, object]:
    return {
        "file": str(file),
        "type": "private" if key.is_private else "public",
        "scheme": key.params.scheme,
        "preset": key.params.name,
        "poly_modulus_degree": key.params.poly_modulus_degree,
        "coeff_mod_bit_sizes": list(key.params.coeff_mod_bit_sizes),
        "scale_bits": key.params.scale_bits,
        "security_bits": key.params.security_bits,
        "fingerprint": key.fingerprint,
    }


@keys_app.command("roster")
def roster(
    output: Annotated[Path, typer.Argument(help="Roster file to write (e.g. roster.json).")],
    identities: Annotated[list[Path], typer.Argument(help="The members' identity.pub files.")],
    min_cohort: Annotated[
        int,
        typer.Option(
            min=2, help="Smallest cohort a client masks with (keep it above the colluders)."
        ),
    ] = 3,
    force: Annotated[bool, typer.Option(help="Overwrite an existing roster.")] = False,
) -> None:
    """Collect identity.pub files into the roster every key holder checks (§4.9).

    Hand the roster to every key holder with the HE key; they start their SuperNode with
    --node-config "roster=... identity-key=...". Example:
    cifer keys roster roster.json keys/site-1/identity.pub keys/site-2/identity.pub
    """
    try:
        if output.exists() and not force:
            raise OutputPathError(f"{output} exists; pass --force to replace it.")
        path = masking.write_roster(output, identities, min_cohort=min_cohort)
        members = masking.load_roster(path).members
    except CiferError as exc:
        raise fail(exc) from exc
    console.print(f"roster       {path}: {len(members)} members ({', '.join(sorted(members))})")
    console.print(f"min cohort   {min_cohort}")


def register(app: typer.Typer) -> None:
    """Add ``keygen`` and the ``keys`` group to the root app."""
    app.command("keygen")(keygen)
    app.add_typer(keys_app, name="keys")
