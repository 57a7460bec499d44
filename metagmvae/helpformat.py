"""argparse help shared by every script: defaults shown, except a None whose meaning the help states."""
import argparse


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)
