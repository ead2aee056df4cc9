{
  description = "A fleet of NixOS hosts deployed with deploy-flake";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";
    # Wherever you get deploy-flake from; `follows` keeps one nixpkgs in
    # your lock file.
    deploy-flake.url = "github:deploy-flake/deploy-flake";
    deploy-flake.inputs.nixpkgs.follows = "nixpkgs";
  };

  outputs = { self, nixpkgs, deploy-flake }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" "x86_64-darwin" "aarch64-darwin" ];
      forAllSystems = nixpkgs.lib.genAttrs systems;

      host = platform: modules: nixpkgs.lib.nixosSystem {
        modules = [ ./hosts/common.nix { nixpkgs.hostPlatform = platform; } ] ++ modules;
      };
    in
    {
      nixosConfigurations = {
        web1 = host "x86_64-linux" [ ./hosts/web.nix { networking.hostName = "web1"; } ];
        web2 = host "x86_64-linux" [ ./hosts/web.nix { networking.hostName = "web2"; } ];
        db1 = host "aarch64-linux" [ ./hosts/db.nix ];
      };

      # Plain data for `deploy-flake`: evaluating it never evaluates a
      # NixOS configuration. Hosts default to every nixosConfigurations
      # name; list them to give each its address and tags.
      deployFlake = deploy-flake.lib.mkDeployFlake {
        inherit self;
        defaults = {
          sshUser = "deploy"; # escalates with `sudo` (see hosts/common.nix)
          timeouts.build = 7200;
        };
        hosts = {
          web1 = { hostname = "web1.example.com"; tags = [ "web" ]; };
          web2 = { hostname = "web2.example.com"; tags = [ "web" "canary" ]; };
          db1 = {
            hostname = "192.0.2.10";
            sshPort = 2222;
            tags = [ "db" ];
            selfCheck = "bin/db-preflight"; # see hosts/db.nix
            timeouts.confirm = 60;
          };
        };
      };

      # `nix flake check` validates deployFlake (options, types, that every
      # configuration exists) without building or evaluating any system.
      checks = forAllSystems (system: {
        deploy = deploy-flake.lib.deployChecks { inherit self system; };
      });

      # `nix run .#deploy-flake -- --all`, `nix run . -- @web`, …
      apps = forAllSystems (system: {
        inherit (deploy-flake.apps.${system}) default deploy-flake;
      });
    };
}
