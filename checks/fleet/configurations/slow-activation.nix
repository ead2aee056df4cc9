# slow-activation: the activation takes several seconds, long enough for a
# test to cut the deployer's connection meanwhile; the deploy must complete.
{
  demo.version = "slow-activation";
  system.activationScripts.demo-slow = ''
    echo "slow activation: started" >&2
    sleep 6
    echo "slow activation: done" >&2
  '';
}
