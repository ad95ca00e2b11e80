/// The release, as `leasehold --version` and the Debian package (`scripts/package`) name it.
public let leaseholdVersion = "0.2.0"
