# Placeholder: flake checks over a deployFlake output.
{ lib }:
_: { }
