/// The ring fingerprint: one value that relays of one pool share exactly when they spread names
/// over the same backends the same way.
extension BackendPool {
    /// FNV-1a 64 of the hash mode followed by each backend identity, each preceded by a newline
    /// (`jump\n10.0.0.1:8125\n10.0.0.2:8125:b`), as 16 lowercase hex digits. A backend whose
    /// weight is not 1 adds it after its identity (`ketama\n10.0.0.1:8125=2\n10.0.0.2:8125`).
    ///
    /// The identities are as written (`host:port[:instance]`), in routing order, so a relay with
    /// the backends in another order, another spelling or another instance label shows another
    /// fingerprint. Health, addresses and policy take no part: they change while a pool runs.
    public var ringFingerprint: String {
        let weighted = backends.map { backend in
            let weight = backend.weight ?? 1
            return weight == 1 ? backend.description : "\(backend.description)=\(weight)"
        }
        let text = ([hashMode.rawValue] + weighted).joined(separator: "\n")
        let hex = String(FNV1a.hash64(text), radix: 16)
        return String(repeating: "0", count: 16 - hex.count) + hex
    }
}
