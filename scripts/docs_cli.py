"""mkdocs hook: docs/cli.md's reference, generated from the `duet` command itself at build time.

The page holds the marker ``<!-- cli-reference -->``; this hook replaces it with every command and
group of ``duet.cli.app`` (through ``typer.main.get_command``, the click command typer runs), each
with its usage line, help and a table of its arguments and options (names, type, default, help),
so the reference can never drift from the code: there is no hand-written copy of an option.
Duck-typed on click's command and parameter interface (typer vendors its own copy of click).
"""

from __future__ import annotations

MARKER = "<!-- cli-reference -->"


def _cell(text: str | None) -> str:
    return " ".join((text or "").split()).replace("|", "\\|")


def _is_flag(param) -> bool:
    return bool(getattr(param, "is_flag", False))


def _default(param) -> str:
    if param.required:
        return "required"
    default = param.default
    if default is None or callable(default) or default == () or (_is_flag(param) and default is False
                                                                   and not param.secondary_opts):
        return ""
    if isinstance(default, bool) and param.secondary_opts:  # --x/--no-x
        return f"`{param.opts[0] if default else param.secondary_opts[0]}`"
    return f"`{default}`"


def _kind(param) -> str:
    if _is_flag(param):
        return "flag"
    kind = getattr(param, "type", None)  # click's ParamType; typer's vendored click keeps the annotation
    if kind is not None:
        choices = getattr(kind, "choices", None)
        return " \\| ".join(f"`{c}`" for c in choices) if choices else kind.name
    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    return getattr(annotation, "__name__", "") if annotation is not None else ""


def _names(param) -> str:
    if param.param_type_name == "argument":
        return f"`{(param.metavar or param.name).upper()}` (argument)"
    return ", ".join(f"`{o}`" for o in (*param.opts, *param.secondary_opts))


def render(command, path: str, depth: int = 2) -> list[str]:
    """Markdown for `command` and, for a group, each of its subcommands (one heading level down)."""
    ctx = command.context_class(command, info_name=path.split()[-1])
    lines = [f"{'#' * depth} `{path}`", ""]
    if command.help:
        lines += [" ".join(command.help.split()), ""]
    lines += ["```", f"{path} {' '.join(command.collect_usage_pieces(ctx))}".rstrip(), "```", ""]
    params = [p for p in command.get_params(ctx) if not getattr(p, "hidden", False) and p.name != "help"]
    if params:
        lines += ["| argument or option | type | default | help |", "|---|---|---|---|"]
        lines += [f"| {_names(p)} | {_kind(p)} | {_default(p)} | {_cell(getattr(p, 'help', None))} |"
                  for p in params]
        lines.append("")
    if hasattr(command, "list_commands"):
        for name in command.list_commands(ctx):
            lines += render(command.get_command(ctx, name), f"{path} {name}", depth + 1)
    return lines


def reference() -> str:
    import typer

    from duet.cli import app

    return "\n".join(render(typer.main.get_command(app), "duet"))


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ARG001 (mkdocs' hook signature)
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, reference())
