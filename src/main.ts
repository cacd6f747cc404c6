// Placeholder entry until the CLI lands.
console.error('openshell-ha-sidecar: not yet implemented');
process.exitCode = 1;
