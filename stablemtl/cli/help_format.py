"""The help layout shared by the command-line tools."""

from __future__ import annotations

import argparse


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's defaults formatter without the noise: ``(default: X)`` is appended to every option whose
    default means something, not to empty defaults (None, False, []) that the help text explains."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False or action.default == []:
            return action.help or ""
        return super()._get_help_string(action)
