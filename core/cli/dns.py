"""``meshscale dns show|set|reset``: the DNS settings of the running server (meshscale's own
commands; headscale has none). ``set`` stores settings over the config file's ``dns:`` section,
``reset`` drops them again (docs/dns.md)."""

from __future__ import annotations

import argparse
import ipaddress
from pathlib import Path
from typing import Any

import yaml

from meshscale.cli.common import Out, add, client, confirm
from meshscale.errors import MeshscaleError

_BOOL = {"true": True, "on": True, "yes": True, "false": False, "off": False, "no": False}


def _bool(value: str) -> bool:
    try:
        return _BOOL[value.lower()]
    except KeyError:
        raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}") from None


def _list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _split(value: str) -> tuple[str, list[str]]:
    domain, sep, addrs = value.partition("=")
    if not sep or not domain:
        raise argparse.ArgumentTypeError(f"expected DOMAIN=RESOLVER[,RESOLVER], got {value!r}")
    return domain, _list(addrs)


def _record(value: str) -> dict[str, str]:
    name, sep, addr = value.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=IP, got {value!r}")
    try:
        kind = "AAAA" if ipaddress.ip_address(addr).version == 6 else "A"
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an IP address in {value!r}") from None
    return {"name": name, "type": kind, "value": addr}


def _text(view: dict[str, Any]) -> str:
    """The settings as the config file's section (so they can be pasted into one)."""
    if view["source"] == "database":
        head = (f"# set through the admin API at {view['updatedAt']}; they override the config "
                "file's dns section ('meshscale dns reset' drops them)")
    else:
        head = "# from the config file's dns section"
    out = [head, yaml.safe_dump({"dns": view["dns"]}, sort_keys=False).rstrip()]
    if view.get("extraRecordsPath"):
        out.append(f"# plus {len(view['extraRecordsFromFile'])} records from "
                   f"{view['extraRecordsPath']} (dns.extra_records_path)")
    return "\n".join(out)


def _from_file(path: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise MeshscaleError(f"{path}: invalid YAML or JSON: {exc}") from None
    if isinstance(data, dict) and set(data) == {"dns"}:
        data = data["dns"]  # a config file's section as it is
    if not isinstance(data, dict):
        raise MeshscaleError(f"{path}: expected the dns section's keys (magic_dns, "
                             "base_domain, nameservers, ...)")
    return data


def _changed(args: argparse.Namespace, current: dict[str, Any]) -> dict[str, Any]:
    dns = _from_file(args.file) if args.file else dict(current)
    ns = dict(dns.get("nameservers") or {})
    if args.magic_dns is not None:
        dns["magic_dns"] = args.magic_dns
    if args.base_domain is not None:
        dns["base_domain"] = args.base_domain
    if args.override_local_dns is not None:
        dns["override_local_dns"] = args.override_local_dns
    if args.nameservers is not None:
        ns["global"] = args.nameservers
    if args.no_split:
        ns["split"] = {}
    if args.split:
        ns["split"] = dict(args.split)
    if args.search_domains is not None:
        dns["search_domains"] = args.search_domains
    if args.no_extra_records:
        dns["extra_records"] = []
    if args.extra_record:
        dns["extra_records"] = args.extra_record
    dns["nameservers"] = ns
    return dns


def run(args: argparse.Namespace) -> Out:
    c = client(args)
    if args.action == "show":
        view = c.call("GET", "/v1/dns")
    elif args.action == "set":
        current = c.call("GET", "/v1/dns")["dns"]
        view = c.call("PUT", "/v1/dns", {"dns": _changed(args, current)})
    elif args.action == "reset":
        confirm(args, "Drop the DNS settings set through the API (the config file's apply)?")
        view = c.call("DELETE", "/v1/dns")
    else:
        raise MeshscaleError(f"unknown action {args.action}")
    if args.output in ("table", ""):
        return Out(_text(view))
    return Out(view)


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    dns = add(sub, "dns", "show or change the DNS settings of the running server", common)
    ds = dns.add_subparsers(dest="action", required=True, metavar="ACTION")
    add(ds, "show", "print the DNS settings in force and where they come from", common,
        aliases=["get", "list", "ls"])
    s = add(ds, "set", "change DNS settings (stored; they override the config file's dns "
            "section); flags not given keep their values", common)
    s.add_argument("-f", "--file", help="a YAML or JSON file of the dns section's keys "
                   "(replaces every setting; the flags then change it further)")
    s.add_argument("--magic-dns", type=_bool, metavar="BOOL",
                   help="answer the tailnet's own names at 100.100.100.100 (true or false)")
    s.add_argument("--base-domain", metavar="DOMAIN",
                   help="the domain under which nodes are named (renames every node)")
    s.add_argument("--override-local-dns", type=_bool, metavar="BOOL",
                   help="clients use the global nameservers instead of their own (true or "
                   "false; needs --nameservers)")
    s.add_argument("--nameservers", type=_list, metavar="ADDR[,ADDR]",
                   help="the global nameservers: IPs or https:// URLs ('' for none)")
    s.add_argument("--split", type=_split, action="append", metavar="DOMAIN=ADDR[,ADDR]",
                   help="a split DNS domain and its resolvers (repeat; replaces all)")
    s.add_argument("--no-split", action="store_true", help="no split DNS domains")
    s.add_argument("--search-domains", type=_list, metavar="DOMAIN[,DOMAIN]",
                   help="the search domains clients append to short names ('' for none)")
    s.add_argument("--extra-record", type=_record, action="append", metavar="NAME=IP",
                   help="an A/AAAA record (repeat; replaces all static records)")
    s.add_argument("--no-extra-records", action="store_true", help="no static extra records")
    add(ds, "reset", "drop the stored DNS settings: the config file's dns section applies",
        common, aliases=["unset"])
    dns.set_defaults(fn=run, aliases={"get": "show", "list": "show", "ls": "show",
                                      "unset": "reset"})
