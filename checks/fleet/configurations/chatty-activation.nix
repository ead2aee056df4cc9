# chatty-activation: the activation prints 3000 lines; every one must reach
# the deployer and nothing may stall. (The snippet runs at every boot of
# this system too, which only costs console output.)
{
  demo.version = "chatty-activation";
  system.activationScripts.deploy-flake-chatty = ''
    i=0
    while [ "$i" -lt 3000 ]; do
      echo "chatty activation line $i: padding padding padding padding padding padding padding"
      i=$((i + 1))
    done
  '';
}
