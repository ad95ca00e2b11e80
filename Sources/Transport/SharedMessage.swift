import PerMessageDeflate

/// A text or binary message sent to many WebSockets (a watch snapshot to every watcher). Where
/// permessage-deflate is on, it is compressed once per window size, on its own, and the same
/// bytes go to every connection whose peer inflates with that window or a larger one.
public final class SharedMessage: @unchecked Sendable {
    public let payload: [UInt8]
    public let isText: Bool
    private let variants = Locked<[Int: [UInt8]?]>([:])

    public init(text: [UInt8]) {
        payload = text
        isText = true
    }

    public init(binary: [UInt8]) {
        payload = binary
        isText = false
    }

    /// The payload compressed alone with `windowBits` (tail removed); nil when it is too small
    /// to be worth it or zlib failed. Made by the first caller, under a lock.
    func compressed(windowBits: Int, configuration: PerMessageDeflateConfiguration) -> [UInt8]? {
        guard payload.count >= configuration.minimumCompressedSize else { return nil }
        return variants.withLock { variants in
            if let made = variants[windowBits] { return made }
            let deflater = Deflater(windowBits: windowBits, memoryLevel: 8, level: configuration.compressionLevel)
            let made = payload.withUnsafeBytes { deflater.compress($0) }
            variants[windowBits] = .some(made)
            return made
        }
    }
}
