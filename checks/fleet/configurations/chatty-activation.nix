# chatty-activation: the activation prints thousands of lines; every one
# must reach the deployer and nothing may stall.
{
  demo.version = "chatty-activation";
  system.activationScripts.lab-chatty = ''
    i=0
    while [ "$i" -lt 3000 ]; do
      echo "chatty activation line $i: padding padding padding padding padding padding padding"
      i=$((i + 1))
    done
  '';
}
