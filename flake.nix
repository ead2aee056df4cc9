{
  description = "deploy-flake: deploy the NixOS configurations of a flake to many hosts over ssh, in parallel, safely";

  # No flake.lock is committed: a user's own lock file pins nixpkgs (usually
  # with `inputs.deploy-flake.inputs.nixpkgs.follows = "nixpkgs"`).
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      linuxSystems = [ "x86_64-linux" "aarch64-linux" ];
      darwinSystems = [ "x86_64-darwin" "aarch64-darwin" ];
      allSystems = linuxSystems ++ darwinSystems;

      forSystems = systems: f:
        builtins.listToAttrs (map (system: { name = system; value = f system; }) systems);

      pkgsFor = system: nixpkgs.legacyPackages.${system};

      # The package, as a callPackage-able function (used by `packages` and
      # by the overlay, so both build the same thing).
      deploy-flake =
        { lib, rustPlatform, makeWrapper, nix, openssh }:
        rustPlatform.buildRustPackage {
          pname = "deploy-flake";
          version = (builtins.fromTOML (builtins.readFile ./Cargo.toml)).package.version;

          src = lib.fileset.toSource {
            root = ./.;
            fileset = lib.fileset.unions [
              ./Cargo.toml
              ./Cargo.lock
              ./src
              ./lib
              ./tests
            ];
          };
          cargoLock.lockFile = ./Cargo.lock;

          nativeBuildInputs = [ makeWrapper ];

          # The unit tier only: library and binary unit tests plus the
          # integration tests that need neither nix, ssh nor the lab (root,
          # containers). The rest runs outside the build sandbox: see README.
          cargoTestFlags = [
            "--lib"
            "--bins"
            "--test"
            "inventory"
            "--test"
            "select"
            "--test"
            "layout"
            "--test"
            "cli_flags"
          ];

          # `nix` and `ssh` from the user's PATH win; ours are the fallback.
          postInstall = ''
            wrapProgram $out/bin/deploy-flake \
              --suffix PATH : ${lib.makeBinPath [ nix openssh ]}
          '';

          meta = {
            description = "Deploy the NixOS configurations of a flake to many hosts over ssh, in parallel, safely";
            license = lib.licenses.mit;
            mainProgram = "deploy-flake";
            platforms = lib.platforms.linux ++ lib.platforms.darwin;
          };
        };
    in
    {
      # System-independent, and free of nixpkgs: evaluating `lib` or
      # `overlays` never fetches or evaluates nixpkgs.
      lib = import ./lib;

      overlays.default = final: _prev: {
        deploy-flake = final.callPackage deploy-flake { };
      };

      packages = forSystems allSystems (system:
        let package = (pkgsFor system).callPackage deploy-flake { }; in
        {
          default = package;
          deploy-flake = package;
        });

      apps = forSystems allSystems (system:
        let
          app = {
            type = "app";
            program = "${self.packages.${system}.deploy-flake}/bin/deploy-flake";
            meta.description = "Deploy the NixOS configurations of a flake to its hosts";
          };
        in
        {
          default = app;
          deploy-flake = app;
        });

      devShells = forSystems allSystems (system:
        let pkgs = pkgsFor system; in
        {
          default = pkgs.mkShell {
            packages = [
              pkgs.cargo
              pkgs.rustc
              pkgs.clippy
              pkgs.rustfmt
              pkgs.nix
              pkgs.openssh
            ];
          };
        });

      # `nix fmt`: nixfmt (RFC 166 style) over the whole tree.
      formatter = forSystems allSystems (system: (pkgsFor system).nixfmt-tree);

      # The package build (with the unit tier) everywhere; the NixOS VM
      # tests (checks/, one per scenario of tests/fixtures/scenarios.nix) on
      # Linux.
      checks = forSystems allSystems (system:
        { package = self.packages.${system}.deploy-flake; }
        // (if builtins.elem system linuxSystems
        then import ./checks { pkgs = pkgsFor system; inherit nixpkgs self; }
        else { }));
    };
}
