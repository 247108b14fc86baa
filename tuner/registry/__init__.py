"""The MLflow model registry: scoring policies become registered versions and come back out of it.

    refs       model references (NAME, NAME@alias, NAME/VERSION), resolving them, the client the calls go through
    promotion  log, register, prove it loads, gate against the champion (and the V1 baseline), move the aliases
    gate       DeLong's paired AUC test, and what `require` / `alpha` make of it
    integrity  checksums recorded at registration and checked after every download
    pull       a version downloaded to a folder, or loaded as a pyfunc model for scoring
    lock       one promotion of a registered model at a time, across processes and machines, kept in the registry
    history    every alias move recorded on the registered model (one tag per event), the previous champion
    rollback   `champion` back to the previous champion or a chosen version, refusing a damaged one
    diff       two versions side by side: origin, data, scores, V1 config and training differences
"""
