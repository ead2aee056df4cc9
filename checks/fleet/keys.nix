# Throwaway ssh keys for the VM tests, generated at build time: one client
# key for the deployer and one host key per target (pinned in the
# deployer's known_hosts). The same derivation is evaluated by the test and,
# from the archived fleet flake, by each target: same store path, built once.
pkgs:
pkgs.runCommand "deploy-flake-vm-test-keys" { nativeBuildInputs = [ pkgs.openssh ]; } ''
  mkdir -p $out
  for name in deployer target1 target2; do
    ssh-keygen -q -t ed25519 -N "" -C "$name" -f "$out/$name"
  done
''
