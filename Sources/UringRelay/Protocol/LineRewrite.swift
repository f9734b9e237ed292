import BasicContainers
import RelayKernel

/// `--metrics-prefix P` and `--metrics-tags T` (the Go StatsRelay's `-metrics-prefix` and
/// `-metrics-tags`): what is written around every relayed line, checked when it is configured.
///
/// ```
/// api.hits:1|c|@0.5                  →  P.api.hits:1|c|@0.5|#T        a metric: prefixed, tagged
/// api.hits:1|c|#env:prod|T1656581400 →  P.api.hits:1|c|#env:prod,T|T1656581400
///                                                   tags end here ^ (",T" inserted there)
/// _sc|db.ping|2|#env:prod|m:slow     →  _sc|db.ping|2|#env:prod,T|m:slow   never prefixed
/// _sc|db.ping|2|m:slow               →  _sc|db.ping|2|#T|m:slow      before the message
/// _e{5,4}:title|text                 →  _e{5,4}:title|text|#T             never prefixed
/// ```
/// A metric's name gets `P.`, and the prefixed name is its routing key (under `--hash-key
/// name+tags`, the prefixed name and the line's own tags: `T` is the same on every line, so it
/// neither splits nor joins a series, and is left out of the key). A service check's name and
/// an event's title are not prefixed: the first is a check name a prefix would rename, the
/// second is counted in the event's `{title,text}` header, and both route unprefixed. Every
/// form carries `|#tags`, so every form is tagged: `,T` right after the end of the line's last
/// tags field (the one the Datadog agent keeps) wherever it sits among the fields (a `|#` with
/// no tag gets `T` alone), or, with no tags field, a new `|#T` at the end of the line, except
/// that a service check's `|m:message` stays last, as the DogStatsD format puts it, so its
/// `|#T` goes right before it (`DogStatsD.tagInsertion`).
///
/// Both are fixed for the relay's life (restart-only, like `--hash-key`): a new prefix moves
/// every series to a new name and, with it, to a new backend.
public struct LineRewrite: Sendable, Equatable {
    /// `P`, without the `.` that joins it to a name; empty: no prefix.
    public private(set) var prefix: String = ""
    /// `T`, the tags appended (`k:v,k2`); empty: none.
    public private(set) var tags: String = ""

    /// No rewriting.
    public init() {}

    /// A rewrite by `prefix` and `tags`.
    ///
    /// - Throws: `ConfigurationError` naming `prefixArgument` or `tagsArgument` for a bad one.
    public init(
        prefix: String, tags: String, prefixArgument: String = "--metrics-prefix", tagsArgument: String = "--metrics-tags"
    ) throws(ConfigurationError) {
        if let reason = Self.problem(prefix: prefix) {
            throw ConfigurationError(argument: prefixArgument, value: prefix, reason: reason)
        }
        if let reason = Self.problem(tags: tags) {
            throw ConfigurationError(argument: tagsArgument, value: tags, reason: reason)
        }
        self.prefix = prefix
        self.tags = tags
    }

    /// Whether lines pass unchanged.
    public var isEmpty: Bool { prefix.isEmpty && tags.isEmpty }

    /// The most bytes rewriting adds to one line: `P.` and `|#T`.
    public var growth: Int { (prefix.isEmpty ? 0 : prefix.utf8.count + 1) + (tags.isEmpty ? 0 : tags.utf8.count + 2) }

    /// The most bytes a datagram of `maxDatagramBytes` becomes once each of its lines is
    /// rewritten (what the send-slot reserve is sized for): a line takes at least 3 bytes of
    /// the datagram (`a:` and its line ending), so it holds at most `D / 3 + 1` lines.
    public func rewrittenDatagramBytes(_ maxDatagramBytes: Int) -> Int {
        maxDatagramBytes + (maxDatagramBytes / 3 + 1) * growth
    }

    /// Why `prefix` cannot prefix a name, or `nil`. Empty is fine (no prefix).
    ///
    /// A name may hold any byte but `:`, `|`, `\n` and NUL (and a `\r` would end a last line); a prefix
    /// starting `_e{` would make every metric read as an event; one ending in `.` would give
    /// `P..name`.
    public static func problem(prefix: String) -> String? {
        if prefix.isEmpty { return nil }
        for byte in prefix.utf8 {
            switch byte {
            case UInt8(ascii: ":"), UInt8(ascii: "|"), UInt8(ascii: "\n"), UInt8(ascii: "\r"), 0:
                return "a name prefix may not hold ':', '|', a line ending or NUL"
            default: break
            }
        }
        if prefix.hasPrefix("_e{") { return "a name starting '_e{' is read as a DogStatsD event" }
        if prefix.hasSuffix(".") { return "the '.' that joins it to the name is added: leave it out" }
        return nil
    }

    /// Why `tags` cannot be appended to a line's tags, or `nil`. Empty is fine (no tags).
    ///
    /// One or more tags separated by `,`, none empty, none holding `|`, `#`, a line ending or
    /// NUL (`k:v` pairs may hold `:`).
    public static func problem(tags: String) -> String? {
        if tags.isEmpty { return nil }
        var tagBytes = 0
        for byte in tags.utf8 {
            switch byte {
            case UInt8(ascii: "|"), UInt8(ascii: "#"), UInt8(ascii: "\n"), UInt8(ascii: "\r"), 0:
                return "tags may not hold '|', '#', a line ending or NUL"
            case UInt8(ascii: ","):
                if tagBytes == 0 { return "an empty tag: tags are 'k:v,k2', separated by single commas" }
                tagBytes = 0
            default:
                tagBytes += 1
            }
        }
        if tagBytes == 0 { return "an empty tag: tags are 'k:v,k2', separated by single commas" }
        return nil
    }

    /// `line` as the relay sends it, and its routing key under `hashKey` (the written-out key
    /// `statsrelay hash` routes by), computed by the relay's own scanner and rewriter; `nil` for
    /// a line the scanner drops or that rewriting makes too long. Only the first line is taken.
    public func rewrite(line: String, hashKey: HashKeyMode) -> (line: [UInt8], key: [UInt8])? {
        var bytes = Array(line.utf8)
        if let end = bytes.firstIndex(of: UInt8(ascii: "\n")) { bytes.removeSubrange(end...) }
        let rewriter = LineRewriter(self)
        var scratch = RoutingKey(maxLineBytes: bytes.count + growth)
        let datagram = bytes.span.bytes
        var offset = 0
        guard case .valid(let start, let end, let key)? = LineScanner.next(in: datagram, from: &offset) else { return nil }
        let edit = rewriter.edit(datagram, line: start..<end, key: key)
        guard edit.length <= BatchAssembler.largestDatagramBytes else { return nil }
        var out: [UInt8] = []
        if edit.isPrefixed { out += Array(prefix.utf8) + [UInt8(ascii: ".")] }
        out += bytes[start..<edit.insertAt]
        for index in edit.insert { out.append(rewriter.tagPieces[index]) }
        out += bytes[edit.insertAt..<end]
        scratch.write(
            datagram, line: start..<end, key: key, prefix: edit.isPrefixed ? rewriter.prefix.span.bytes : RawSpan(),
            withTags: hashKey == .nameAndTags)
        let written = Span<UInt8>(_bytes: scratch.written.span.bytes)
        var keyBytes: [UInt8] = []
        for index in written.indices { keyBytes.append(written[index]) }
        return (out, keyBytes)
    }
}

/// A `LineRewrite` as bytes, for a worker's line loop: what is written around a line, and
/// where (`edit`). Made once per worker; reading it never allocates.
struct LineRewriter: ~Copyable {
    /// `P.`, or empty.
    let prefix: RigidArray<UInt8>
    /// `|#T,T`: the three tag pieces are ranges of it (`Edit.insert`):
    /// ```
    /// |#env:x,env:x
    /// ^^^^^^^          a new field, for a line without tags
    ///        ^^^^^^    `,T`, after the line's tags
    ///         ^^^^^    `T`, into an empty tags field (`|#` alone) or one ending in `,`, which
    ///                  `,T` would give an empty tag
    /// ```
    let tagPieces: RigidArray<UInt8>
    /// The FNV-1a 64 state after `P.`: a prefixed name's hash continues from it.
    let prefixSeed: UInt64
    let hasPrefix: Bool
    let hasTags: Bool
    /// The lengths of `P.` and `T`.
    private let prefixCount: Int
    private let tagsCount: Int
    /// Whether lines are rewritten at all.
    var isActive: Bool { hasPrefix || hasTags }

    init(_ rewrite: LineRewrite) {
        var prefix = RigidArray<UInt8>(capacity: rewrite.prefix.utf8.count + 1)
        if !rewrite.prefix.isEmpty {
            for byte in rewrite.prefix.utf8 { prefix.append(byte) }
            prefix.append(UInt8(ascii: "."))
        }
        var pieces = RigidArray<UInt8>(capacity: 2 * rewrite.tags.utf8.count + 3)
        if !rewrite.tags.isEmpty {
            pieces.append(UInt8(ascii: "|"))
            pieces.append(UInt8(ascii: "#"))
            for byte in rewrite.tags.utf8 { pieces.append(byte) }
            pieces.append(UInt8(ascii: ","))
            for byte in rewrite.tags.utf8 { pieces.append(byte) }
        }
        var seed = FNV1a.offsetBasis
        for index in 0..<prefix.count { seed = RoutingKey.feed(seed, prefix[index]) }
        prefixSeed = seed
        hasPrefix = !rewrite.prefix.isEmpty
        hasTags = !rewrite.tags.isEmpty
        prefixCount = prefix.count
        tagsCount = rewrite.tags.utf8.count
        self.prefix = prefix
        tagPieces = pieces
    }

    /// How one line is rewritten: `P.` (if `isPrefixed`), the line up to `insertAt`, the bytes
    /// `insert` of `tagPieces`, the rest of the line.
    struct Edit {
        var isPrefixed: Bool
        var insertAt: Int
        var insert: Range<Int>
        /// The rewritten line's length, without its newline.
        var length: Int

        /// No rewrite.
        static let none = Edit(isPrefixed: false, insertAt: 0, insert: 0..<0, length: 0)
    }

    /// How the valid line `line` of `datagram`, keyed by `key`, is rewritten.
    @inline(__always)
    func edit(_ datagram: RawSpan, line: Range<Int>, key: Range<Int>) -> Edit {
        // A metric's key starts the line; a service check's name and an event's title do not.
        let isPrefixed = hasPrefix && key.lowerBound == line.lowerBound
        let length = line.count &+ (isPrefixed ? prefixCount : 0)
        guard hasTags else { return Edit(isPrefixed: isPrefixed, insertAt: line.upperBound, insert: 0..<0, length: length) }
        let place = DogStatsD.tagInsertion(datagram, line: line, key: key)
        let insert: Range<Int>
        switch place.existing {
        case nil: insert = 0..<tagsCount &+ 2
        case .some(let tags) where tags.isEmpty || Span<UInt8>(_bytes: datagram)[tags.upperBound &- 1] == UInt8(ascii: ","):
            // `,T` after a field that is empty or ends in `,` would make an empty tag.
            insert = tagsCount &+ 3..<2 &* tagsCount &+ 3
        case .some: insert = tagsCount &+ 2..<2 &* tagsCount &+ 3
        }
        return Edit(isPrefixed: isPrefixed, insertAt: place.offset, insert: insert, length: length &+ insert.count)
    }
}
