# healthy-v2-with-tool: healthy-v2 plus a package, lab-tool, on the
# system's PATH: a change `diff` shows as a package added.
{ lib, pkgs, ... }:
{
  imports = [ ./healthy-v2.nix ];
  demo.version = lib.mkForce "healthy-v2-with-tool";
  environment.systemPackages = [ (pkgs.writeShellScriptBin "lab-tool" "echo lab-tool 1.0") ];
}
